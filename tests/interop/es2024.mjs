// js-libp2p 3.x and its helpers (it-queue, mortice, abort-error, ...) call
// `Promise.withResolvers`, which is ES2024 and arrives in Node.js 22; they declare no `engines`
// floor, and this machine has Node.js 20. This module adds exactly that one standard function
// when it is missing (its behaviour is fixed by ECMA-262 §27.2.4.8), and must be imported before
// anything from libp2p. On Node.js >= 22 it does nothing.

if (typeof Promise.withResolvers !== 'function') {
  Object.defineProperty(Promise, 'withResolvers', {
    value: function withResolvers () {
      let resolve
      let reject
      const promise = new this((res, rej) => {
        resolve = res
        reject = rej
      })
      return { promise, resolve, reject }
    },
    writable: true,
    configurable: true
  })
}
