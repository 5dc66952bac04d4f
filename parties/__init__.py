"""Deployment of the three parties: gRPC transport with mTLS, config, launcher, inference API.

- :mod:`parties.grpc_comm`: :class:`GrpcCommunicator`, the process-per-party transport.
- :mod:`parties.wire`: tensors as chunked messages, validated on arrival.
- :mod:`parties.certs`, :mod:`parties.tls`: the cluster CA and mutual TLS.
- :mod:`parties.config`: the cluster config file.
- :mod:`parties.local`: three-party gRPC clusters on one machine (tests, benchmarks).
- :mod:`parties.service`, :mod:`parties.client`: the private-inference client API.
- :mod:`parties.cli`, :mod:`parties.launch`: the ``veil`` command.
"""
