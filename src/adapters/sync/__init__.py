"""Data sync over ports only: the Lustre HSM export (an elevated job on the cluster, confirmed
in the data bucket) and the router that gives each plan kind its synchronizer (the direct
upload is Nexus's: ``adapters/nexus/upload.py``)."""
