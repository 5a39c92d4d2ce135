"""``mlmoat redteam``: calibrate the ML defences and attack them through the real stack."""
