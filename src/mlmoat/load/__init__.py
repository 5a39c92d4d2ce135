"""The bounded load test across instances: several ``start-api`` processes, one DynamoDB.

``python -m mlmoat.load [--instances 3] [--clients 8] [--keys 24] [--duration 30]``

It starts one local DynamoDB (``mlmoat.local.server.EmbeddedDynamoDB``, a moto server that
applies DynamoDB calls one at a time as DynamoDB applies the writes to an item), creates its
tables (``mlmoat local bootstrap``),
creates many keys with small budgets and rate limits (``mlmoat keys create``), starts several
``mlmoat local start-api``
processes standing in for Lambda instances, all sharing that one table, and drives concurrent
clients against them for a bounded time and a bounded number of requests, on loopback only.
Then it stops everything and checks, from three independent records (the responses the
clients saw, the audit lines the instances wrote, the items DynamoDB holds):

* no 5xx and no transport error; every status is 200 or 429;
* exactly one audit record per request (by ``X-Request-Id``), and none without a request;
* every budget exact to the row: rows used never exceed it, and every refusal for the budget
  came when the request's rows no longer fitted;
* every rate window exact to the row, the same way, per window;
* DynamoDB's counters (``rows_used``, ``requests``, the live window) equal the audit trail's
  allowed rows and requests, which equal the responses'.

It prints a summary and exits 0 only if every check holds; ``--report`` writes it as JSON.

Modules: ``plan`` (configuration, keys, JWT subjects), ``traffic`` (clients and samples),
``checks`` (the exactness checks and the report), ``cli`` (the run and the command line); the
stack itself (DynamoDB, bootstrap, start-api instances, keys, evidence) is
``mlmoat.local.stack``. ``python -m mlmoat.loadtest`` is the same command.
"""
