"""featurewell's wire format, version 1: the stubs generated from
protos/featurewell/v1/feature_service.proto (`make proto`), and `columns`, the packed column
layout both the client and the server encode and decode with."""
