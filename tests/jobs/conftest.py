"""The decision tests' webhook receiver and Celery worker fixtures, for the job tests."""

from tests.decisions.test_e2e import receiver, start_worker

__all__ = ["receiver", "start_worker"]
