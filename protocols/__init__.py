"""Semi-honest three-party protocols (ABY3 building blocks, PUMA approximations in approx/)."""
