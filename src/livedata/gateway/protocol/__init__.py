"""Sans-I/O protocol modules of the gateway: parse, validate, error codes, ids and framing.

Each module takes bytes or text and gives events, errors and bytes; nothing here
touches a socket, a task or a clock, so each is tested without a server.
"""
