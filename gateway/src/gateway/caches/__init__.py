"""What a replica keeps in memory so that the hot path asks no service: sessions, parents'
links and children's overviews, each dropped by the events that make it wrong."""
