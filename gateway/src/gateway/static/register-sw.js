// Installs Parent Portal's service worker (/sw.js), which shows an offline page when the
// network is gone. The pages work the same without it.
if ("serviceWorker" in navigator) {
  navigator.serviceWorker.register("/sw.js", { scope: "/" }).catch(() => {});
}
