"""Session set-up, one module per handshake version, side by side (as libsignal keeps
``pqxdh.rs`` next to its X3DH code).

Each version module is complete on its own: message format, transcript, key schedule,
initiator and responder. Reading one never needs the other, and this package imports
neither, so a version can be dropped by deleting its file.
"""
