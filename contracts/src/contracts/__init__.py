"""Parent Portal contracts: every message schema and subject name, versioned.

Services know each other only through this package. Domain logic never lives here; the
`kit` subpackage is the small messaging and persistence toolkit that all services use alike.
"""
