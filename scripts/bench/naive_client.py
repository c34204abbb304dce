#!/usr/bin/env python3
"""The guide's naive client, draining a backlog: benchmark (3) of scripts/bench.sh.

A faithful rendering of the Raspberry Pi example of the integration guide
(shared/seed, "Python (Raspberry Pi)"): the same IoTDevice class, one
`requests.post` per reading with no Session (so a new TCP connection each time),
one after another, printing a line per reading. Only two things differ, both so
that it can drain the SAME backlog the gateway drains:

- the readings come from `profilo-gateway queue export --format jsonl` instead of
  random.uniform(), and keep their capture `timestamp` (the guide stamps
  datetime.now(), which API.md says is wrong and which would cost the same);
- no time.sleep(5) between readings: a backlog is sent as fast as the loop goes.

Everything else is the guide's, bugs included: it counts only status 200 as a
success (the server answers 201, so it prints "Échec envoi: 201" although the
reading is stored), and its refresh_token attribute shadows the refresh_token()
method (a 401 would raise TypeError, caught as "Erreur d'envoi"); with the
benchmark server's 1 h access lifetime no 401 happens.

Usage: naive_client.py BASE_URL USERNAME PASSWORD BACKLOG.jsonl [LIMIT]
Prints the guide's lines on stdout, and a JSON summary on stderr (last line):
{"sent": N, "http_2xx": N, "seconds": S, "readings_per_s": R}.
"""
import json
import sys
import time

import requests


class IoTDevice:
    def __init__(self, api_base_url, username, password):
        self.api_base_url = api_base_url
        self.username = username
        self.password = password
        self.access_token = None
        self.refresh_token = None
        self.last_status = None  # benchmark bookkeeping only

    def login(self):
        """Connexion et obtention des tokens"""
        try:
            response = requests.post(
                f"{self.api_base_url}/api/token/",
                json={
                    "username": self.username,
                    "password": self.password
                }
            )

            if response.status_code == 200:
                data = response.json()
                self.access_token = data["access"]
                self.refresh_token = data["refresh"]
                print("Connexion réussie!")
                return True
            else:
                print(f"Échec de la connexion: {response.status_code}")
                return False

        except Exception as e:
            print(f"Erreur de connexion: {e}")
            return False

    def refresh_token(self):
        """Rafraîchir le token d'accès"""
        try:
            response = requests.post(
                f"{self.api_base_url}/api/token/refresh/",
                json={"refresh": self.refresh_token}
            )

            if response.status_code == 200:
                data = response.json()
                self.access_token = data["access"]
                print("Token rafraîchi!")
                return True
            else:
                print(f"Échec du refresh: {response.status_code}")
                return False

        except Exception as e:
            print(f"Erreur de refresh: {e}")
            return False

    def _post_data(self, headers, data):
        """The guide's POST of one reading, its status kept for the benchmark."""
        response = requests.post(
            f"{self.api_base_url}/api/send/data/",
            headers=headers,
            json=data
        )
        self.last_status = response.status_code
        return response

    def send_data(self, temperature, humidity, accelerometer, timestamp):
        """Envoyer des données à l'API"""
        try:
            headers = {
                "Authorization": f"Bearer {self.access_token}",
                "Content-Type": "application/json"
            }

            data = {
                "temperature": temperature,
                "humidite": humidity,
                "accelerometre": accelerometer,
                "timestamp": timestamp
            }

            response = self._post_data(headers, data)

            if response.status_code == 200:
                print("Données envoyées avec succès!")
                return True
            elif response.status_code == 401:
                # Token expiré, essayer de le rafraîchir
                if self.refresh_token():
                    # Réessayer avec le nouveau token
                    headers["Authorization"] = f"Bearer {self.access_token}"
                    response = self._post_data(headers, data)

                    if response.status_code == 200:
                        print("Données envoyées après refresh!")
                        return True

            print(f"Échec envoi: {response.status_code}")
            return False

        except Exception as e:
            print(f"Erreur d'envoi: {e}")
            return False


def main():
    if len(sys.argv) not in (5, 6):
        sys.exit(__doc__)
    base_url, username, password, backlog = sys.argv[1:5]
    limit = int(sys.argv[5]) if len(sys.argv) == 6 else None
    readings = []
    with open(backlog, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                readings.append(json.loads(line))
            if limit is not None and len(readings) >= limit:
                break

    device = IoTDevice(api_base_url=base_url, username=username, password=password)
    if not device.login():
        sys.exit(1)

    ok = 0
    start = time.monotonic()
    for r in readings:
        device.last_status = None
        device.send_data(
            r.get("temperature"), r.get("humidite"), r.get("accelerometre"), r["timestamp"]
        )
        if device.last_status is not None and 200 <= device.last_status < 300:
            ok += 1
    seconds = time.monotonic() - start
    sys.stdout.flush()
    print(json.dumps({
        "sent": len(readings),
        "http_2xx": ok,
        "seconds": round(seconds, 3),
        "readings_per_s": round(len(readings) / seconds, 2) if seconds > 0 else None,
    }), file=sys.stderr)


if __name__ == "__main__":
    main()
