"""Alert delivery and monitoring: the forwarder (alerts topic → Alertmanager), the Prometheus
rules and Alertmanager routing kept in this folder, and a loopback stack of the Debian binaries.
"""
