"""How the gateway reaches the services."""
