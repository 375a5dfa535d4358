"""A device over the network: the server, its wire protocol and the client (pyzmq is imported only here)."""
