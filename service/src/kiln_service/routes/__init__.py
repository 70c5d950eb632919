"""HTTP routes of the Kiln API."""
