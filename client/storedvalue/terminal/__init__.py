"""The terminal library a point-of-sale application embeds."""
