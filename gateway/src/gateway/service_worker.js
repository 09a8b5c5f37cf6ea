// Parent Portal's service worker: an offline page when the network is gone, and nothing else.
//
// It keeps only what is the same for everyone: the offline page, the stylesheet and the icons,
// fetched without cookies. Pages and API answers carry children's names and go to the network
// every time; nothing it fetches for them is ever written to a cache.
// The gateway fills in the cache's version from the files below, so that a change to any of
// them installs this worker again and drops the old cache.

const CACHE = "portal-shell-__VERSION__";
const OFFLINE = "/offline";
const SHELL = [OFFLINE, __SHELL_ASSETS__];

self.addEventListener("install", (event) => {
  event.waitUntil(
    caches
      .open(CACHE)
      .then((cache) => cache.addAll(SHELL.map((url) => new Request(url, { credentials: "omit", cache: "reload" }))))
      .then(() => self.skipWaiting()),
  );
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches
      .keys()
      .then((names) => Promise.all(names.filter((name) => name !== CACHE).map((name) => caches.delete(name))))
      .then(() => self.clients.claim()),
  );
});

function fromShell(path) {
  return caches.open(CACHE).then((cache) => cache.match(path));
}

function offlinePage() {
  return fromShell(OFFLINE).then(
    (page) =>
      page ||
      new Response("You are offline. Check your connection, then try again.", {
        status: 503,
        headers: { "Content-Type": "text/plain; charset=utf-8" },
      }),
  );
}

self.addEventListener("fetch", (event) => {
  const request = event.request;
  const url = new URL(request.url);
  if (url.origin !== self.location.origin) {
    return;
  }
  if (request.mode === "navigate") {
    // Network only: the page is never stored; the offline page stands in when it cannot come.
    event.respondWith(fetch(request).catch(offlinePage));
    return;
  }
  if (request.method === "GET" && SHELL.includes(url.pathname) && url.pathname !== OFFLINE) {
    // The network first, so that a new stylesheet shows at once; the kept copy when offline.
    event.respondWith(
      fetch(request).catch(() => fromShell(url.pathname).then((kept) => kept || Response.error())),
    );
  }
  // Anything else (the API included) is left to the browser, as if there were no worker.
});
