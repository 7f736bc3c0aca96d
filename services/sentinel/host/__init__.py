"""Host security agents and their configuration: auditd rule sets (:mod:`.rules`), the
process-memory textfile collector (:mod:`.procmem`), the textfile writer both Sentinel host agents
use (:mod:`.textfile`), systemd units (:mod:`.units`) and install/remove on a non-NixOS host
(:mod:`.install`). The auditd watchdog lives in :mod:`sentinel.watchdog`.
"""
