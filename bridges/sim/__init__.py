"""Dev and test tools: the strict Realtime GA simulator and the telephony test clients.

Nothing on the production path imports this package; the simulator needs the `openai`
package (the `sim` extra) for its strict checks.
"""
