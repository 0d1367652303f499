-- worldsim bridge. The Python env (worldsim/envs/real_minetest.py) writes worldsim.json into the world
-- folder before starting the game; this mod reads it, puts the player at a seeded start, sets the time of
-- day, hides the HUD, fills the hotbar, and writes the player's state to worldsim_state.txt every server
-- step (the env reads it for `info` and knows the world is ready when the state file first appears).
local wp = minetest.get_worldpath()
local f = assert(io.open(wp .. "/worldsim.json", "r"))
local S = minetest.parse_json(f:read("*a"))
f:close()

local player_ref = nil
local ready = false

local function place(player)
  -- the first candidate (x, z) whose ground is dry land; get_spawn_level uses mapgen noise, no map needed
  for _, c in ipairs(S.candidates) do
    local y = minetest.get_spawn_level(c[1], c[2])
    if y then
      player:set_pos({x = c[1], y = y + 0.5, z = c[2]})
      return
    end
  end
  player:set_pos({x = S.candidates[1][1], y = 30, z = S.candidates[1][2]})
end

minetest.register_on_joinplayer(function(player)
  player_ref = player
  player:hud_set_flags({hotbar = S.hud, healthbar = S.hud, crosshair = S.hud, wielditem = S.hud,
                        breathbar = S.hud, minimap = false, minimap_radar = false})
  minetest.set_timeofday(S.time_of_day)
  local inv = player:get_inventory()
  for i, item in ipairs(S.items) do inv:set_stack("main", i, ItemStack(item)) end
  place(player)
  player:set_look_horizontal(S.yaw)
  player:set_look_vertical(0)
  -- let the client load the blocks around the start before the env starts stepping
  minetest.after(S.settle, function() ready = true end)
end)

minetest.register_on_leaveplayer(function() player_ref = nil end)

minetest.register_globalstep(function()
  if not (ready and player_ref) then return end
  local p = player_ref:get_pos()
  local out = io.open(wp .. "/worldsim_state.tmp", "w")
  out:write(string.format("%.3f %.3f %.3f %.5f %.5f %.5f %d\n", p.x, p.y, p.z,
    player_ref:get_look_horizontal(), player_ref:get_look_vertical(), minetest.get_timeofday(),
    player_ref:get_wield_index()))
  out:close()
  os.rename(wp .. "/worldsim_state.tmp", wp .. "/worldsim_state.txt")
end)
