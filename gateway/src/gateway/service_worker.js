// Parent Portal's service worker: an offline page when the network is gone, and nothing else.
//
// It keeps only what is the same for everyone: the offline page in each language, the
// stylesheet and the icons, fetched without cookies. Pages and API answers carry children's
// names and go to the network every time; nothing it fetches for them is ever written to a
// cache. Of a page it notes one thing: the language it came in (its Content-Language), so that
// the offline page is shown in the language the visitor reads the portal in.
// The gateway fills in the cache's version from the files below, so that a change to any of
// them installs this worker again and drops the old cache.

const CACHE = "portal-shell-__VERSION__";
const OFFLINE_PAGES = __OFFLINE_PAGES__;
const DEFAULT_LANGUAGE = __DEFAULT_LANGUAGE__;
const OFFLINE = OFFLINE_PAGES[DEFAULT_LANGUAGE];
// Where the language of the last page is kept (nothing while it is the default): in the cache,
// because a worker's variables go when the browser stops it, after a minute or so of nothing to do.
const LAST_LANGUAGE = "/offline/last-language";
const SHELL = [...Object.values(OFFLINE_PAGES), __SHELL_ASSETS__];

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

function lastLanguage() {
  return fromShell(LAST_LANGUAGE).then((kept) => (kept ? kept.text() : DEFAULT_LANGUAGE));
}

function noteLanguage(response) {
  // Only a language the portal has, and only when it changed: one write per change, not per page.
  const lang = (response.headers.get("Content-Language") || "").trim();
  if (!Object.hasOwn(OFFLINE_PAGES, lang)) {
    return Promise.resolve();
  }
  return lastLanguage().then((kept) =>
    kept === lang
      ? undefined
      : caches.open(CACHE).then((cache) => cache.put(LAST_LANGUAGE, new Response(lang))),
  );
}

function offlinePage() {
  return lastLanguage()
    .then((lang) => fromShell(OFFLINE_PAGES[lang] || OFFLINE))
    .then((page) => page || fromShell(OFFLINE))
    .then(
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
    event.respondWith(
      fetch(request).then(
        (response) => {
          event.waitUntil(noteLanguage(response).catch(() => undefined));
          return response;
        },
        offlinePage,
      ),
    );
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
