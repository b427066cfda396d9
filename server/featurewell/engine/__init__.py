"""The feature engine: validated domain requests in, typed columns with per-value status out.

Below the gRPC adapter (`serving/`) and above the store (`store/`): it plans reads from feature
references, asks the store for views and entity columns, decodes, applies statuses and on-demand
transforms, and validates writes. Nothing here knows gRPC or protobuf.
"""
