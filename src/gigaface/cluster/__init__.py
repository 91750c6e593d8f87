"""Scans on a Ray cluster: the same stages as a local scan, their work done by workers.

    connect   the address (--cluster, $GIGAFACE_CLUSTER), reaching it, joining it as a driver
    versions  what a node runs (gigaface, its engine's code, the models), compared with the driver
    worker    the actor on each node: a CPU slot or a GPU, its models loaded once
    pool      the actors of a cluster: started, checked, fed, replaced when they die
    units     the detect stage's units of work (shipped bands, frames, band ranges)
    scan      the use case: captures scanned on a cluster into one library, several at once

The driver (the process that runs `gigaface scan --cluster`, or a service job) is the one
writer: it commits each band and each batch of descriptions as a local scan does
(`ingest.scan_path` is the one implementation; a cluster only brings its own band source and
describer), so `--resume` continues a scan whose driver was killed. Ray is imported only
here, and only when a cluster is asked for: `pip install 'gigaface[ray]'`.
"""
