"""Sky positions at the database boundary: parsing, names, the zone index, cones and pairs."""
