"""Sans-I/O protocol modules of the gateway: text in, events and bytes out, no sockets."""
