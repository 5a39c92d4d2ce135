"""The regression suite of the outside security test (issue #12): one entry per finding.

Each finding the test reproduced names the tests that fail on the code it was run against
(commit 128e203) and pass now (5.4 and 5.5 are measurements; docs/threat-model.md says why).
`make regression` runs exactly these; the suite runs them too, and `tests/unit/test_findings.py`
holds every entry to a test that exists. docs/threat-model.md has the table with the
before/after figures.

Run: ``python tests/findings.py`` prints the node ids (the Makefile passes them to pytest).
"""

from __future__ import annotations

FINDINGS: dict[str, tuple[str, list[str]]] = {
    "1.1": (
        "a prediction-issuer JWT with scope admin administers keys",
        [
            "tests/integration/test_core_admin.py::test_no_prediction_credential_administers",
            "tests/integration/test_core_admin.py::test_every_admin_route_refuses_an_admin_scope_key",
        ],
    ),
    "1.2": (
        "nothing caps a created key (999999999/second, 1e12, probabilities:6, no expiry)",
        [
            "tests/integration/test_core_admin.py::test_created_keys_are_capped",
            "tests/integration/test_core_admin.py::test_a_key_without_an_expiry_gets_the_lifetime_cap",
        ],
    ),
    "1.3": (
        "JWT subjects cannot be suspended through the admin API or CLI",
        ["tests/integration/test_core_admin.py::test_subjects_are_suspended_reinstated_and_shown"],
    ),
    "2.1": (
        "a refused body costs nothing and reaches no detector",
        [
            "tests/integration/test_core_admission.py::test_scope_is_enforced_and_the_refusal_costs_a_refusal_not_rows",
            "tests/integration/test_core_admission.py::test_refusals_are_capped_per_principal",
            "tests/handlers/test_extraction_queue.py::test_refusals_of_known_callers_are_queued_without_rows_and_others_not_at_all",
        ],
    ),
    "2.2": (
        "240 never-fits probes recover the iris envelope with 0 rows charged",
        [
            "tests/handlers/test_envelope_probing.py::test_the_240_probe_envelope_recovery_is_stopped_before_the_120th"
        ],
    ),
    "3.1": (
        "20 bad guesses from an address lock a valid key behind it out",
        [
            "tests/integration/test_core_admission.py::test_a_valid_key_is_served_from_an_address_that_just_failed_30_times"
        ],
    ),
    "3.2": (
        "640 guesses over 80 addresses are never throttled",
        [
            "tests/integration/test_core_admission.py::test_a_guess_spread_over_many_addresses_is_throttled_by_key_id_and_in_total"
        ],
    ),
    "3.3": (
        "bad-signature JWTs are never counted",
        [
            "tests/integration/test_core_tokens.py::test_bad_signature_tokens_are_guesses_the_throttle_counts"
        ],
    ),
    "4.1": (
        "a claimed rate is compared by its average (86400/day under 60/minute)",
        ["tests/unit/test_policy.py::test_rate_claims_allow_no_more_rows_in_any_default_window"],
    ),
    "4.2": (
        "a claimed output policy is compared by its decimals only (top-k, threshold widened)",
        [
            "tests/unit/test_policy.py::test_a_claim_that_widens_any_dimension_gets_the_default",
            "tests/unit/test_tokens.py::test_policy_claims_can_narrow_but_never_widen",
        ],
    ),
    "4.3": (
        "no maximum token lifetime (exp ten years out, 1e300)",
        ["tests/unit/test_tokens.py::test_a_token_living_longer_than_the_cap_is_refused"],
    ),
    "5.1": (
        "a malformed Host or X-Forwarded-Port, or two Hosts, is a 502 with no audit record",
        [
            "tests/handlers/test_edge_responses.py::test_a_malformed_host_or_port_is_a_400_with_one_audit_record",
            "tests/handlers/test_edge_responses.py::test_two_host_headers_are_a_400_with_one_audit_record",
            "tests/handlers/test_edge_responses.py::test_an_http_api_event_with_a_joined_host_is_a_400",
        ],
    ),
    "5.2": (
        "a trailing slash is a 307 whose Location comes from Host/X-Forwarded-Proto",
        [
            "tests/handlers/test_edge_responses.py::test_a_trailing_slash_is_a_404_in_the_envelope_not_a_redirect"
        ],
    ),
    "5.3": (
        "two X-API-Key headers differing in case are merged and the last wins",
        [
            "tests/handlers/test_edge_responses.py::test_two_key_headers_differing_only_in_case_are_refused"
        ],
    ),
    "5.4": (
        "unknown key ids answer faster than wrong secrets",
        [
            "tests/handlers/test_timing_parity.py::test_unknown_ids_and_wrong_secrets_take_the_same_time"
        ],
    ),
    "5.5": (
        "with refuse, a label-only key learns which inputs the model is unsure of (measured)",
        [
            "tests/redteam/test_squeeze_leak.py::test_the_refusal_bit_is_what_refuse_answers_for_each_row_asked_alone",
            "tests/redteam/test_squeeze_leak.py::test_the_quick_leak_report_prints_the_table",
        ],
    ),
    "5.6": (
        "predictions and admin views carry no Cache-Control",
        [
            "tests/handlers/test_edge_responses.py::test_every_prediction_response_forbids_caching",
            "tests/handlers/test_edge_responses.py::test_admin_views_forbid_caching",
        ],
    ),
    "5.7": (
        "the local start-api log writes a query-string key and raw control characters",
        [
            "tests/local/test_local_start_api.py::test_the_access_log_drops_query_strings_and_escapes_control_characters"
        ],
    ),
}


def node_ids() -> list[str]:
    """Every test of every finding, once, in finding order."""
    seen: dict[str, None] = {}
    for _, tests in FINDINGS.values():
        seen.update(dict.fromkeys(tests))
    return list(seen)


def in_suite_order() -> list[str]:
    """The node ids in the order the whole suite runs them (by file path). The session's moto
    server shares moto's in-process state with the unit tests' ``mock_aws``, which resets it
    when it stops: handler tests must not follow unit tests that mock AWS."""
    return sorted(node_ids(), key=lambda node: node.partition("::")[0])


if __name__ == "__main__":
    print(" ".join(in_suite_order()))
