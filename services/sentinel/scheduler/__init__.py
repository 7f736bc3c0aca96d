"""SchedulerService (huey background and periodic jobs)."""
