"""The Prefect UI of the real server, in headless Chromium (Debian's ``chromium`` driven through
``/usr/bin/chromedriver`` by selenium): what an operator sees.

- the deployments, one per target, with their schedules, and the form of a custom run;
- the retried run (``retried_run``: failed for part of the users, then retried): Completed,
  run count 2, both attempts' summaries among its artifacts;
- a completed run's summary artifact: the table of counts per action.

Screenshots go to tests/output/prefect-ui/ (git-ignored; their paths are printed).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from deployments.processes import REPO_ROOT
from tests.support.browser import BrowserMissing, chromium
from tests.support.browser import screenshot as browser_screenshot
from tests.support.browser import wait_for as browser_wait_for

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

    from tests.integration.prefect_server_fixtures import PrefectSite, RetriedRun

pytest_plugins = ["tests.integration.prefect_server_fixtures"]
pytestmark = [pytest.mark.integration]

OUTPUT = REPO_ROOT / "tests" / "output" / "prefect-ui"
SCHEDULES = ("Every 5 minutes", "Every 15 minutes", "At 02:00 AM every day")


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    try:
        with chromium(OUTPUT) as driver:
            yield driver
    except BrowserMissing as exc:
        pytest.fail(str(exc))


def screenshot(driver: WebDriver, name: str) -> Path:
    return browser_screenshot(driver, OUTPUT, name)


def wait_for(driver: WebDriver, name: str, *texts: str) -> str:
    """Wait until the page shows every text; return its text (a screenshot on a timeout)."""
    try:
        return browser_wait_for(driver, OUTPUT, name, *texts)
    except AssertionError as exc:
        pytest.fail(str(exc))


def click_tab(driver: WebDriver, label: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(
        By.XPATH, f"//li[contains(@class, 'p-tab')][normalize-space(.)='{label}']"
    ).click()


def summaries(site: PrefectSite, run: RetriedRun) -> list[Any]:
    """The run's ``provision-users-summary`` artifacts, oldest first (one per attempt)."""
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterId,
    )
    from prefect.client.schemas.sorting import ArtifactSort

    with site.server.client() as client:
        return list(
            client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=["provision-users-summary"])
                ),
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.run_id])),
                sort=ArtifactSort.CREATED_DESC,
            )
        )[::-1]


def test_the_deployments_page_lists_every_target_s_deployments_with_their_schedules(
    browser: WebDriver, prefect_site: PrefectSite
) -> None:
    browser.get(f"{prefect_site.server.ui_url}/deployments")
    names = [name.split("/")[1] for name in prefect_site.deployments]
    page = wait_for(browser, "deployments", *names, *SCHEDULES)
    assert f"{len(names)} Deployments" in page
    screenshot(browser, "deployments")


def test_a_custom_run_of_provision_users_shows_a_form_of_its_typed_parameters(
    browser: WebDriver, prefect_site: PrefectSite
) -> None:
    """The flow's parameters are typed: Run → Custom run is a form, one field per parameter."""
    with prefect_site.server.client() as client:
        deployment = client.read_deployment_by_name("provision_users/every-5-minutes-app-a")
    browser.get(f"{prefect_site.server.ui_url}/deployments/deployment/{deployment.id}/run")
    parameters = ("config_path", "target", "allow_mass_deprovisioning", "approval_timeout")
    wait_for(browser, "custom-run", *parameters)
    screenshot(browser, "custom-run")


def test_the_retried_run_shows_completed_after_two_attempts_with_both_summaries(
    browser: WebDriver, prefect_site: PrefectSite, retried_run: RetriedRun
) -> None:
    """The run page: Completed, its deployment, and (Details) run count 2; its artifacts hold
    the failed attempt's summary and the retry's, whose headlines the API gives."""
    run = retried_run.final
    browser.get(f"{prefect_site.server.ui_url}/runs/flow-run/{run.id}")
    wait_for(browser, "retried-run", run.name, "Completed", "every-5-minutes-app-a", "Retry")
    screenshot(browser, "retried-run")
    click_tab(browser, "Details")
    page = wait_for(browser, "retried-run-details", "Run Count")
    assert "Run Count\n2\n" in page
    first, last = summaries(prefect_site, retried_run)
    assert "users with problems" in first.description
    assert "every user in step" in last.description
    click_tab(browser, "Artifacts")
    wait_for(browser, "retried-run-artifacts", first.description, last.description)
    screenshot(browser, "retried-run-artifacts")


def test_a_completed_run_s_summary_artifact_shows_its_table(
    browser: WebDriver, prefect_site: PrefectSite, retried_run: RetriedRun
) -> None:
    summary = summaries(prefect_site, retried_run)[-1]
    browser.get(f"{prefect_site.server.ui_url}/artifacts/artifact/{summary.id}")
    page = wait_for(browser, "summary", "provision-users-summary", summary.description, "succeeded")
    assert "target action planned succeeded failed" in page
    assert "app-a\ncreate\n" in page
    screenshot(browser, "summary")
