"""Multi-host tests: workers on simulated hosts (network, UTS and PID namespaces of this machine,
joined by a bridge to a PostgreSQL of their own) under partitions, clock skew, equal pids and a
database restart. Root only (skipped otherwise, with the reason); `python -m pytest -m multihost`
runs them alone. The harness is hosts.py, the shared checks cluster.py, the workers' app app.py."""
