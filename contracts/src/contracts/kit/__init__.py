"""The messaging and persistence kit every service uses the same way."""
