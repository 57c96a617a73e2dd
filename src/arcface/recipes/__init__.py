"""End-to-end recipes that wire data preparation, training and evaluation together."""
