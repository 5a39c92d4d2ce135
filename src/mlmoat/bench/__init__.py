"""``mlmoat bench``: mlmoat measured against the seed's recipe, side by side, in one run."""
