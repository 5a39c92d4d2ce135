"""API Gateway REST (v1) proxy events, shaped as ``sam local generate-event apigateway aws-proxy``.

Both stacks receive byte-identical requests apart from the credential header, so neither is
favoured by its input.
"""

from __future__ import annotations

import json
from typing import Any


def rest_event(
    *,
    path: str,
    body: object,
    headers: dict[str, str],
    source_ip: str = "198.51.100.7",
    method: str = "POST",
) -> dict[str, Any]:
    """An API Gateway v1 proxy event carrying ``body`` as JSON."""
    all_headers = {
        "Accept": "application/json",
        "Content-Type": "application/json",
        "Host": "bench.execute-api.us-east-1.amazonaws.com",
        "User-Agent": "mlmoat-bench",
        "X-Forwarded-For": source_ip,
        "X-Forwarded-Port": "443",
        "X-Forwarded-Proto": "https",
        **headers,
    }
    return {
        "body": json.dumps(body),
        "resource": path,
        "path": path,
        "httpMethod": method,
        "isBase64Encoded": False,
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": None,
        "stageVariables": None,
        "headers": all_headers,
        "multiValueHeaders": {name: [value] for name, value in all_headers.items()},
        "requestContext": {
            "accountId": "123456789012",
            "resourceId": "123456",
            "stage": "Prod",
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "requestTime": "09/Apr/2015:12:34:56 +0000",
            "requestTimeEpoch": 1428582896000,
            "identity": {
                "cognitoIdentityPoolId": None,
                "accountId": None,
                "cognitoIdentityId": None,
                "caller": None,
                "accessKey": None,
                "sourceIp": source_ip,
                "cognitoAuthenticationType": None,
                "cognitoAuthenticationProvider": None,
                "userArn": None,
                "userAgent": "mlmoat-bench",
                "user": None,
            },
            "path": f"/Prod{path}",
            "resourcePath": path,
            "httpMethod": method,
            "apiId": "1234567890",
            "protocol": "HTTP/1.1",
        },
    }
