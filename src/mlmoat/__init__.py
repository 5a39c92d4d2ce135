"""mlmoat's local tooling: the ``mlmoat`` command. Never deployed to Lambda."""
