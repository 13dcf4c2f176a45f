"""A handler for the image tests, mounted into the container: jobs whose prompt says "slow"
outlive any test, the others take a moment."""

import time


def run(job):
    time.sleep(600 if "slow" in job.prompt else 0.2)
