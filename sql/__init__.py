"""The SQL of uploaderd, shipped as package data (``uploaderd.sql``)."""
