"""Drives the operator console at /admin in a real headless Chromium.

Run by tests/api/console_browser.rs against a gateway on the fake WeChat,
with a JSON argument: {"base", "appid", "admin_key", "send_key", "openid",
"template", "screenshots"}. Every step saves a screenshot; any failure raises
(a non-zero exit the Rust test reports with this script's output).
"""

import json
import os
import sys
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def main():
    config = json.loads(sys.argv[1])
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.path.exists(path):
            raise SystemExit(f"{path} is missing: apt-get install -y chromium chromium-driver")
    os.makedirs(config["screenshots"], exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(argument)
    # The driver is named: Selenium Manager never downloads one.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        run(driver, config)
    finally:
        driver.quit()
    print("console steps passed")


def run(driver, config):
    wait = WebDriverWait(driver, 15)
    shots = iter(range(1, 100))

    def shot(name):
        path = os.path.join(config["screenshots"], f"{next(shots):02d}-{name}.png")
        driver.save_screenshot(path)

    driver.get(config["base"] + "/admin")
    wait.until(ec.visibility_of_element_located((By.ID, "key")))
    shot("login")

    # A wrong key: an error, and the login form stays.
    sign_in(driver, "not-a-key")
    error = wait.until(ec.visibility_of_element_located((By.ID, "error")))
    wait.until(lambda _: "invalid_api_key" in error.text)
    assert driver.find_element(By.ID, "login").is_displayed()
    assert not driver.find_element(By.ID, "console").is_displayed()
    shot("wrong-key")

    # The right key: the apps, then the chosen app's console.
    sign_in(driver, config["admin_key"])
    wait.until(ec.visibility_of_element_located((By.ID, "console")))
    assert not driver.find_element(By.ID, "error").is_displayed(), \
        driver.find_element(By.ID, "error").text
    stored = driver.execute_script("return sessionStorage.getItem('formid-gateway.admin-key')")
    assert stored == config["admin_key"], "the key is kept in the tab's session storage"
    assert driver.get_cookies() == [], "no cookie"
    Select(driver.find_element(By.ID, "app")).select_by_value(config["appid"])
    wait.until(lambda _: driver.find_element(By.ID, "users-reachable").text.isdigit())
    shot("signed-in")

    # A message sent through the API appears with its attempt.
    message_id = send(config)
    driver.find_element(By.ID, "reload").click()
    item = wait.until(ec.presence_of_element_located(
        (By.CSS_SELECTOR, f'li.message[data-id="{message_id}"]')))
    wait.until(lambda _: "sent" in item.find_element(By.CSS_SELECTOR, "li.attempt").text)
    assert "errcode 0" in item.text, item.text
    shot("message-sent")

    # Looking up the user: their messages only, and their quota.
    driver.find_element(By.ID, "search-openid").send_keys(config["openid"])
    driver.find_element(By.CSS_SELECTOR, "#search button[type=submit]").click()
    wait.until(lambda _: driver.find_element(By.ID, "user").is_displayed()
               and driver.find_element(By.ID, "user-openid").text == config["openid"])
    listed = driver.find_elements(By.CSS_SELECTOR, "#message-list li.message")
    assert listed and all(config["openid"] in entry.text for entry in listed), \
        [entry.text for entry in listed]
    shot("user-lookup")

    # The failures chart: an SVG of 24 bars, one of them not empty.
    chart = driver.find_element(By.CSS_SELECTOR, "#chart svg")
    bars = chart.find_elements(By.CSS_SELECTOR, "rect.bar-rect")
    assert len(bars) == 24, len(bars)
    assert any(float(bar.get_attribute("height")) > 0 for bar in bars), "a bar for the failure"
    driver.execute_script("arguments[0].scrollIntoView()", chart)
    shot("failures-chart")

    # At a phone's width nothing overflows sideways.
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True})
    driver.execute_script("window.scrollTo(0, 0)")
    width = driver.execute_script("return window.innerWidth")
    assert width == 390, width
    overflow = driver.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"{overflow} px of horizontal overflow at 390 px"
    shot("phone-width")
    driver.execute_script("arguments[0].scrollIntoView()", driver.find_element(By.ID, "messages"))
    shot("phone-width-messages")


def sign_in(driver, key):
    field = driver.find_element(By.ID, "key")
    field.clear()
    field.send_keys(key)
    driver.find_element(By.ID, "sign-in").click()


def send(config):
    """Sends the test template to the user through the gateway's API."""
    body = json.dumps({
        "touser": config["openid"],
        "template_id": config["template"],
        "data": {"keyword1": {"value": "Order 7"}, "keyword2": {"value": "Shipped"}},
    }).encode()
    request = urllib.request.Request(
        f'{config["base"]}/v1/apps/{config["appid"]}/messages', data=body, method="POST",
        headers={"Authorization": "Bearer " + config["send_key"],
                 "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.load(response)
    assert answer["status"] == "sent", answer
    return answer["id"]


if __name__ == "__main__":
    main()
