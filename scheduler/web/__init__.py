"""`piapi-bulk web`: a page of batches, its JSON and Prometheus metrics, in one Starlette app.

- `auth`: who may read it (nobody needs to sign in on loopback; a token or basic auth
  elsewhere);
- `rates`: rows per minute, the recent rate and the ETA (pure);
- `data`: the JSON model of the page, from the database (bounded, indexed queries);
- `page`: that model as server-rendered HTML with an inline SVG chart;
- `metrics`: a prometheus-client collector reading the database and Redis at scrape time;
- `app`: the routes, with the webhook receiver's when webhooks are configured.
"""
