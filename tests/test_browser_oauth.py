"""The landing page and the OAuth round trip in a real browser: Debian's chromium, headless, driven by
Selenium through Debian's chromium-driver, against the DigitalOcean OAuth stand-in.

Screenshots of each step are written to the test's tmp dir (and to $WID_SCREENSHOT_DIR if set).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from devkit.do_world import World
from devkit.git_helpers import ARTICLE_FIRST_PUSH, GitUser, article_files
from tests.worlds import serve_world

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:  # pragma: no cover - reported by the fixture below
    webdriver = None  # type: ignore[assignment]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from serve_world(tmp_path_factory.mktemp("browser") / "data")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if webdriver is None or missing:
        pytest.fail("the browser test needs Debian's chromium and chromium-driver (apt-get install chromium "
                    f"chromium-driver) and selenium in the venv; missing: {missing or ['selenium']}")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-dev-shm-usage",
                     "--disable-default-apps", "--disable-extensions", "--window-size=1200,1500",
                     f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: WebDriver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    target = os.environ.get("WID_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)
    return path


def wait(driver: WebDriver) -> WebDriverWait:
    return WebDriverWait(driver, 20)


def test_landing_page_and_oauth_round_trip(world: World, browser: WebDriver, tmp_path: Path) -> None:
    team = world.stand_in.add_team("Browser Team")
    world.stand_in.add_team("Another Team")  # the consent page offers both; the admin picks one

    browser.get(f"{world.url}/")
    assert browser.title == "Workload identity for DigitalOcean"
    header = browser.find_element(By.TAG_NAME, "header").text
    assert "stands in for the DigitalOcean API" in header and "!" not in header
    assert "OAuth client configured" in browser.find_element(By.ID, "oauth-client").text
    assert browser.find_element(By.ID, "no-teams").is_displayed()
    button = browser.find_element(By.ID, "authorize-button")
    assert button.text == "Authorize" and button.is_enabled()
    assert screenshot(browser, tmp_path, "1-landing").stat().st_size > 10_000

    button.click()
    wait(browser).until(expected_conditions.presence_of_element_located((By.ID, "team-select")))
    assert browser.current_url.startswith(f"{world.stand_in.url}/v1/oauth/authorize?")
    scopes = browser.find_element(By.ID, "scopes").text
    assert "database:view_credentials" in scopes and "spaces_key:create_credentials" in scopes
    Select(browser.find_element(By.ID, "team-select")).select_by_value(team.uuid)
    screenshot(browser, tmp_path, "2-consent")
    browser.find_element(By.ID, "approve").click()

    wait(browser).until(expected_conditions.url_contains("connected="))
    assert browser.current_url == f"{world.url}/?connected={team.uuid}"
    notice = browser.find_element(By.ID, "connected").text
    assert "Team Browser Team is connected" in notice and "until then every workload request" in notice
    row = browser.find_element(By.CSS_SELECTOR, f'tr.team[data-team="{team.uuid}"]')
    assert "Browser Team" in row.text and "Active" in row.text
    assert row.get_attribute("data-rbac") == "missing" and "Not pushed" in row.text
    assert f"{world.url}/_rbac/DigitalOcean/{team.uuid}/" in row.text
    screenshot(browser, tmp_path, "3-connected")
    # The flow's cookie was cleared, and the proxy now holds the team's token.
    assert all(c["name"] != "wid_do_oauth" for c in browser.get_cookies())
    assert world.credential(team.uuid).status == "active"

    # An admin pushes the articles' roles and policies with git; the page shows them in force, as they are.
    admin = GitUser(tmp_path / "admin", world.url, world.pat(team.uuid))
    repo = admin.new_repo("rbac", article_files(ARTICLE_FIRST_PUSH),
                          remote=f"{world.url}/_rbac/DigitalOcean/{team.uuid}/")
    admin.git("push", "-q", "deploy", "main", cwd=repo)
    head = admin.git("rev-parse", "HEAD", cwd=repo).stdout.strip()
    browser.get(f"{world.url}/?connected={team.uuid}")
    notice = browser.find_element(By.ID, "connected").text
    assert "are in force" in notice and "denied" not in notice
    row = browser.find_element(By.CSS_SELECTOR, f'tr.team[data-team="{team.uuid}"]')
    assert row.get_attribute("data-rbac") == "pushed"
    assert "In force" in row.text and "2 roles, 3 policies" in row.text
    assert f"commit {head[:12]} (version 1)" in row.text and "pushed 20" in row.text
    assert "denied" not in row.text and "Not pushed" not in row.text
    teams = browser.find_element(By.ID, "teams").text
    assert "database-credential-read" not in teams and "ex-database" not in teams, "this public page shows counts only"
    assert screenshot(browser, tmp_path, "4-rbac-pushed").stat().st_size > 10_000

    # The team removes the app at DigitalOcean; the next workload call finds out; the page shows it.
    world.stand_in.revoke_authorization(team.uuid)
    denied = requests.get(f"{world.url}/v2/databases?tag_name=my-tag", timeout=15,
                          headers={"Authorization": f"Bearer {world.jwt(team.uuid)}"})
    assert denied.status_code == 403 and denied.json()["id"] == "team_authorization_revoked"
    browser.get(f"{world.url}/")
    row = browser.find_element(By.CSS_SELECTOR, f'tr.team[data-team="{team.uuid}"]')
    assert "Revoked" in row.text and "authorizes again" in row.text
    assert "In force" in row.text, "the configuration stays in force; the team's token is what is missing"
    screenshot(browser, tmp_path, "5-revoked")


def test_denied_consent_in_the_browser(world: World, browser: WebDriver, tmp_path: Path) -> None:
    team = world.stand_in.add_team("Cautious Team")
    browser.get(f"{world.url}/")
    browser.find_element(By.ID, "authorize-button").click()
    wait(browser).until(expected_conditions.presence_of_element_located((By.ID, "deny")))
    Select(browser.find_element(By.ID, "team-select")).select_by_value(team.uuid)
    browser.find_element(By.ID, "deny").click()
    wait(browser).until(expected_conditions.presence_of_element_located((By.ID, "error-id")))
    assert browser.find_element(By.ID, "title").text == "Authorization was not granted"
    assert browser.find_element(By.ID, "error-id").text == "access_denied"
    screenshot(browser, tmp_path, "6-denied")
    browser.find_element(By.ID, "home").click()
    wait(browser).until(expected_conditions.presence_of_element_located((By.ID, "authorize-button")))
    assert world.credential(team.uuid) is None
