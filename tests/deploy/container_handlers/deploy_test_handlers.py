"""A handler for the image tests, mounted into the container: jobs whose prompt says "slow"
outlive any test, the others take a moment."""

import time


def run(job):  # noqa: ANN001, ANN201 - loaded by the supervisor inside the container
    time.sleep(600 if "slow" in job.prompt else 0.2)
