addEventListener("fetch", (event) =>
  event.respondWith(new Response("hello from JavaScript\n", { headers: { "content-type": "text/plain" } }))
);
