"""``mlmoat local``: the SAM application run on this machine with no AWS account and no Docker.

An embedded DynamoDB (moto server), tables and queues bootstrapped from template.yaml, functions
invoked from the Lambda build under CPython 3.13 with only their code and layers on the path
(``mlmoat.python313``), and the template's
REST API served as API Gateway would call the functions.
"""
