"""Adapters of the sensors kata to servers its design does not use: they exist for the common-mistake
switches, so the lab can run the "before" world next to the design and measure the difference."""
