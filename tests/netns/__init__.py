"""End-to-end tests against the real kernel, inside network namespaces the tests create and remove."""
