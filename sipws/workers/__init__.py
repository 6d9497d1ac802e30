"""Several worker processes under one master (``[server] workers``).

``plan`` holds the pure rules (ports, ids, merging), ``control`` the
master-worker channel, ``master`` and ``worker`` the two kinds of process,
``admin`` the master's side of the admin interface.
"""
