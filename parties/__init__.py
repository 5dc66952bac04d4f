"""Deployment of the three parties: gRPC transport with mTLS, config, launcher, inference API.

- :mod:`veil.parties.grpc_comm`: :class:`GrpcCommunicator`, the process-per-party transport.
- :mod:`veil.parties.wire`: tensors as chunked messages, validated on arrival.
- :mod:`veil.parties.certs`, :mod:`veil.parties.tls`: the cluster CA and mutual TLS.
- :mod:`veil.parties.config`: the cluster config file.
- :mod:`veil.parties.local`: three-party gRPC clusters on one machine (tests, benchmarks).
- :mod:`veil.parties.service`, :mod:`veil.parties.client`: the private-inference client API.
- :mod:`veil.parties.cli`, :mod:`veil.parties.launch`: the ``veil`` command.
"""
