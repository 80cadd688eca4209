"""A local emulator of the Azure AI Search REST API (data plane, 2024-07-01) for kb's tests."""
