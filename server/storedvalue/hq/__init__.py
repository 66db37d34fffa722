"""The HQ server: owns cards, locks, the journal, parameters and offline sync."""
