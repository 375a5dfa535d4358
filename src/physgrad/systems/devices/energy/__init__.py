"""Energy-based devices: the lab state machine (:mod:`.base`) and two networks that relax to an energy minimum."""
