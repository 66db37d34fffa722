"""The gRPC transport: servicers that only translate between protobuf and the services."""
