"""The wire protocol (``veil.proto``) and its generated code; see :mod:`veil.proto.generate`."""
